//! A route's faults through a listener, with a real client and backend: every request refused
//! with the fault's status and no backend asked; every request held for the delay and then
//! answered by the backend; half the requests refused, about half.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::proxy::test_bed;

async fn listener() -> SocketAddr {
    let port = test_bed::http1().await.port();
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[pool]]\nname = \"dead\"\nport = {port}\nbackends = [{{ address = \"127.0.0.2\" }}]\n\
         [[route]]\nlistener = \"l\"\nhost = \"abort.test\"\npool = \"dead\"\nfault = {{ abort_status = 503 }}\n\
         [[route]]\nlistener = \"l\"\nhost = \"delay.test\"\npool = \"p\"\nfault = {{ delay_ms = 300 }}\n\
         [[route]]\nlistener = \"l\"\nhost = \"half.test\"\npool = \"p\"\n\
         fault = {{ abort_status = 500, abort_percent = 50 }}\n"
    );
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    super::mutations::start_listener(listener, &routes).await.0
}

#[tokio::test]
async fn a_route_s_faults_hold_or_refuse_its_share_of_requests() {
    let address = listener().await;
    for http2 in [false, true] {
        // The pool is dead: the 503 is the fault's, not a failed try's 502.
        assert_eq!(test_bed::get(address, "abort.test", http2).await, (503, "fault injected\n".into()));
        let started = Instant::now();
        assert_eq!(test_bed::get(address, "delay.test", http2).await, (200, "read 0".into()));
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    }
    let mut refused = 0;
    for _ in 0..100 {
        match test_bed::get(address, "half.test", false).await {
            (500, body) if body == "fault injected\n" => refused += 1,
            (200, _) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!((25..=75).contains(&refused), "{refused} of 100 refused");
}
