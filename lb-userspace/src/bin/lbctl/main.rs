//! lbctl: operate a running lbd through its admin socket: pools, backends, deny lists, counters.
//! `cli` is what it takes, `client` how it asks lbd, `print` how it shows the answers; `run`
//! below maps each noun and verb to its request and its table (the longer ones in a function
//! of their own: pools, deny, stats, flow, plan, cache purge, decap-stats).
use std::{net::SocketAddr, path::Path, time::Duration};

mod cli;
mod client;
mod print;
mod top;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use hyper::Method;
use lb_userspace::{admin::views, dataplane::counters, state::Command};
use serde_json::{Value, json};

use cli::{
    CacheVerb, Cli, DenyVerb, ListenerVerb, NodeVerb, Noun, Output, PlanVerb, PoolVerb, RouteVerb, VipVerb,
};
use client::{ask, call, command};

async fn run(cli: Cli) -> Result<()> {
    let json_out = matches!(cli.output, Output::Json);
    // A command's answer: as it came, or the changes it made, one a line.
    let changed = |value: &Value| if json_out { show(value) } else { print::changes(value) };
    match &cli.noun {
        Noun::Status => {
            if let Some(status) = ask::<views::Status>(&cli, Method::GET, "/status", None).await? {
                print::status(&status);
            }
        }
        Noun::Reload => {
            if let Some(applied) = ask::<views::Changes>(&cli, Method::POST, "/reload", None).await? {
                for line in &applied.changes {
                    println!("{line}");
                }
                println!("reload applied ({} changes)", applied.changes.len());
            }
        }
        // Answered in main, without lbd.
        Noun::Generate { .. } => {}
        Noun::Top { interval } => top::top(&cli.socket, Duration::from_secs(*interval)).await?,
        Noun::Upgrade => {
            if let Some(done) = ask::<views::Upgraded>(&cli, Method::POST, "/upgrade", None).await? {
                println!("upgraded: lbd {} serves; the old one drains and exits", done.pid);
            }
        }
        Noun::Listener { verb: ListenerVerb::List } => {
            if let Some(listeners) =
                ask::<Vec<views::Listener>>(&cli, Method::GET, "/listeners", None).await?
            {
                print::listeners(&listeners);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                print::certificates(&listeners, now);
            }
        }
        Noun::Route { verb: RouteVerb::List } => {
            if let Some(routes) = ask::<Vec<views::Route>>(&cli, Method::GET, "/routes", None).await? {
                print::routes(&routes);
            }
        }
        Noun::Route { verb: RouteVerb::Split { route, pool, percent } } => {
            let split = Command::SetSplit { route: route.clone(), pool: pool.clone(), percent: *percent };
            changed(&command(&cli, split).await?);
        }
        Noun::Route {
            verb: RouteVerb::Fault { route, delay_ms, delay_percent, abort_status, abort_percent, clear },
        } => {
            let spec = lb_userspace::config::FaultSpec {
                delay_ms: *delay_ms,
                delay_percent: *delay_percent,
                abort_status: *abort_status,
                abort_percent: *abort_percent,
            };
            let fault = Command::SetFault { route: route.clone(), fault: (!clear).then_some(spec) };
            changed(&command(&cli, fault).await?);
        }
        Noun::Node { verb } => {
            let drained = matches!(verb, NodeVerb::Drain);
            changed(&command(&cli, Command::SetNodeDrain { drained }).await?);
        }
        Noun::Vip { verb: VipVerb::List } => {
            if let Some(vips) = ask::<Vec<views::Vip>>(&cli, Method::GET, "/vips", None).await? {
                print::vips(&vips);
            }
        }
        Noun::Pool { verb } => pools(&cli, verb).await?,
        Noun::Backend { verb } => changed(&command(&cli, verb.clone().command()).await?),
        Noun::Deny { verb } => deny(&cli, verb).await?,
        Noun::Stats { vip, backend, watch } => stats(&cli, *vip, *backend, *watch).await?,
        Noun::Flow { vip, protocol, source } => flow(&cli, *vip, protocol, *source).await?,
        Noun::Plan { config, change } => plan(&cli, config.as_deref(), change.as_ref()).await?,
        Noun::Cache { verb: CacheVerb::Purge { route, path } } => purge(&cli, route, path.as_ref()).await?,
        Noun::DecapStats { pin_dir } => decap_stats(&cli, pin_dir)?,
    }
    Ok(())
}

/// Print JSON as it came (`-o json`).
fn show(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// `pool list` and `pool show NAME`: a table a pool.
async fn pools(cli: &Cli, verb: &PoolVerb) -> Result<()> {
    let v = match verb {
        PoolVerb::List => call(&cli.socket, Method::GET, "/pools", None).await?,
        PoolVerb::Show { name } => call(&cli.socket, Method::GET, &format!("/pools/{name}"), None).await?,
    };
    if matches!(cli.output, Output::Json) {
        show(&v);
    } else if v.is_array() {
        let pools: Vec<views::Pool> = serde_json::from_value(v).context("lbd's /pools answer")?;
        pools.iter().for_each(print::pool);
    } else {
        print::pool(&serde_json::from_value(v).context("lbd's /pools/NAME answer")?);
    }
    Ok(())
}

/// `deny add|remove PREFIX` (a command) and `deny list`.
async fn deny(cli: &Cli, verb: &DenyVerb) -> Result<()> {
    let json_out = matches!(cli.output, Output::Json);
    let change = match verb {
        DenyVerb::Add { prefix } => Command::AddDeny { prefix: *prefix },
        DenyVerb::Remove { prefix } => Command::RemoveDeny { prefix: *prefix },
        DenyVerb::List => {
            let prefixes = call(&cli.socket, Method::GET, "/deny", None).await?;
            if json_out {
                show(&prefixes);
            } else {
                for p in prefixes.as_array().into_iter().flatten() {
                    println!("{}", p.as_str().unwrap_or_default());
                }
            }
            return Ok(());
        }
    };
    let answer = command(cli, change).await?;
    if json_out {
        show(&answer)
    } else {
        print::changes(&answer)
    }
    Ok(())
}

/// `cache purge ROUTE [PATH]`: how many entries went.
async fn purge(cli: &Cli, route: &str, path: Option<&String>) -> Result<()> {
    let purge = views::Purge { route: route.to_owned(), path: path.cloned() };
    let v = call(&cli.socket, Method::POST, "/cache/purge", Some(serde_json::to_value(purge)?)).await?;
    if matches!(cli.output, Output::Json) {
        show(&v);
    } else {
        println!("purged {} entries", v["purged"].as_u64().unwrap_or(0));
    }
    Ok(())
}

/// `decap-stats`: a backend's decapsulation counters, read from its pinned map (no lbd).
fn decap_stats(cli: &Cli, pin_dir: &Path) -> Result<()> {
    let rows: Vec<Value> = counters::decap(pin_dir)?
        .into_iter()
        .map(|(s, c)| json!({ "name": s.name(), "packets": c.packets, "bytes": c.bytes }))
        .collect();
    if matches!(cli.output, Output::Json) {
        show(&json!(rows))
    } else {
        print::decap(&rows)
    }
    Ok(())
}

/// `stats`: the counters once, or every `watch` seconds with the rates since the last look.
async fn stats(cli: &Cli, vip: bool, backend: bool, watch: Option<u64>) -> Result<()> {
    let mut previous: Option<(views::Stats, std::time::Instant)> = None;
    loop {
        let v = call(&cli.socket, Method::GET, "/stats", None).await?;
        let stats: views::Stats = serde_json::from_value(v.clone()).context("lbd's /stats answer")?;
        if matches!(cli.output, Output::Json) {
            show(&v);
        } else {
            let rate = previous.as_ref().map(|(p, at)| (p, at.elapsed().as_secs_f64()));
            print::stats(&stats, rate, vip, backend);
        }
        let Some(seconds) = watch else { return Ok(()) };
        previous = Some((stats, std::time::Instant::now()));
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        println!();
    }
}

/// `flow VIP PROTOCOL SOURCE`: which backend the data plane would pick, and why.
async fn flow(cli: &Cli, vip: SocketAddr, protocol: &str, source: SocketAddr) -> Result<()> {
    let proto: lb_userspace::config::Protocol =
        serde_json::from_value(json!(protocol)).map_err(|_| anyhow::anyhow!("{protocol}: tcp or udp"))?;
    let query = views::FlowQuery { protocol: proto, source, vip };
    let body = Some(serde_json::to_value(&query)?);
    if let Some(flow) = ask::<views::Flow>(cli, Method::POST, "/flow", body).await? {
        match flow.backend {
            Some(backend) => println!("{source} -> {vip}/{protocol}: backend {backend} ({})", flow.why),
            None => println!("{source} -> {vip}/{protocol}: not forwarded (XDP action {})", flow.action),
        }
    }
    Ok(())
}

/// `plan -c NEW.toml` or `plan backend ...`: what a reload or a change would move, VIP by VIP.
async fn plan(cli: &Cli, config: Option<&Path>, change: Option<&PlanVerb>) -> Result<()> {
    let query = match (config, change) {
        (Some(path), None) => {
            // lbctl reads the file (bounded, regular files only) and sends its text.
            let text = lb_userspace::config::read_file(path)
                .with_context(|| format!("reading {}", path.display()))?;
            views::PlanQuery {
                config_text: Some(text),
                config_name: Some(path.display().to_string()),
                ..Default::default()
            }
        }
        (None, Some(PlanVerb::Backend { verb })) => {
            views::PlanQuery { commands: vec![verb.clone().command()], ..Default::default() }
        }
        _ => bail!("give either -c NEW.toml or a change (`lbctl plan backend remove POOL ADDR`)"),
    };
    let body = Some(serde_json::to_value(&query)?);
    if let Some(plans) = ask::<Vec<views::VipPlan>>(cli, Method::POST, "/plan", body).await? {
        print::plan(&plans);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // A closed pipe (`lbctl stats | head`) ends lbctl quietly, as it does any other tool.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    if let Noun::Generate { what, dir } = &cli.noun {
        let written = lb_userspace::generate::generate(<Cli as clap::CommandFactory>::command(), *what, dir);
        return match written {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("lbctl: {err}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let _ = client::TIMEOUT.set(Duration::from_secs(cli.timeout));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lbctl: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lbctl: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
