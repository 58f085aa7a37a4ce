//! Basic auth through a listener, with real clients over HTTP/1.1 and HTTP/2: the challenge, a
//! right login reaching the backend with its user's name (a forged one replaced), wrong ones
//! refused, and guesses limited by the route's rate limit before they are hashed.
use std::net::SocketAddr;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};

use crate::proxy::test_bed;

/// A backend that answers with the `x-user` it was sent and whether Authorization reached it.
async fn backend() -> SocketAddr {
    test_bed::listening(|stream| async move {
        let service = service_fn(|request: Request<Incoming>| async move {
            let field = |name: &str| request.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
            let user = field("x-user").unwrap_or_default();
            let authorization = field("authorization").is_some();
            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(format!("{user} {authorization}")))))
        });
        test_bed::serve(stream, false, service).await;
    })
    .await
}

fn login(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

async fn ask(
    address: SocketAddr,
    host: &str,
    login: Option<&str>,
    http2: bool,
) -> (hyper::http::response::Parts, String) {
    let mut request = Request::builder().uri(format!("http://{host}/")).header("x-user", "mallory");
    if let Some(login) = login {
        request = request.header("authorization", login);
    }
    test_bed::ask(address, request.body(Empty::<Bytes>::new()).unwrap(), http2).await
}

#[tokio::test]
async fn a_route_behind_basic_auth_lets_its_users_in_and_limits_guesses() {
    let dir = std::env::temp_dir().join(format!("sluice-basic-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users");
    // htpasswd -nbB -C 4 ann 'open sesame'
    std::fs::write(&users, "ann:$2y$04$o2bVFVIz.Iqlx6PNV0I.qOGGW6y7kqYhqXMCrf2OkVxyZOmEg/qBa\n").unwrap();
    let backend = backend().await;
    let (file, port) = (users.display(), backend.port());
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\nhost = \"staff.test\"\npool = \"p\"\n\
         basic_auth = {{ file = \"{file}\", realm = \"staff\", user_header = \"x-user\" }}\n\
         [[route]]\nlistener = \"l\"\nhost = \"guarded.test\"\npool = \"p\"\n\
         basic_auth = {{ file = \"{file}\" }}\nrate_limit = {{ requests_per_second = 0.01, burst = 2 }}\n"
    );
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n";
    let (address, _, _) = super::mutations::start_listener(listener, &routes).await;
    let right = login("ann", "open sesame");
    for http2 in [false, true] {
        let (head, body) = ask(address, "staff.test", None, http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (401, "credentials required\n"));
        let challenge = head.headers.get("www-authenticate").map(|v| v.to_str().unwrap());
        assert_eq!(challenge, Some("Basic realm=\"staff\", charset=\"UTF-8\""));
        let (head, body) = ask(address, "staff.test", Some(&right), http2).await;
        assert_eq!(
            (head.status.as_u16(), body.as_str()),
            (200, "ann true"),
            "the user's name, not the forged one"
        );
        let (head, body) = ask(address, "staff.test", Some(&login("ann", "guess")), http2).await;
        assert_eq!((head.status.as_u16(), body.as_str()), (401, "credentials not accepted\n"));
        assert!(head.headers.contains_key("www-authenticate"));
    }
    // The rate limit comes first: the third guess is refused unhashed, even a right one.
    let (head, _) = ask(address, "guarded.test", Some(&login("ann", "guess")), false).await;
    assert_eq!(head.status, 401);
    let (head, body) = ask(address, "guarded.test", Some(&right), false).await;
    assert_eq!(
        (head.status.as_u16(), body.as_str()),
        (200, "mallory true"),
        "no user_header: the client's own passes"
    );
    let (head, _) = ask(address, "guarded.test", Some(&right), false).await;
    assert_eq!(head.status, 429);
    std::fs::remove_dir_all(dir).unwrap();
}
