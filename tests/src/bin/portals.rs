//! The local portal simulators (ultimus, gsp) as a program, for the README demo and
//! for trying flows by hand: `faena-portals [PORT]` (default 8090), 127.0.0.1 only.

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let port = match std::env::args().nth(1) {
        None => 8090,
        Some(p) => p
            .parse()
            .map_err(|_| anyhow::anyhow!("PORT: `{p}` is not a port number"))?,
    };
    let portals = faena_tests::portals::serve(port).await?;
    println!(
        "portal simulators on {url}: {url}/ultimus/login, {url}/gsp/login",
        url = portals.url
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
