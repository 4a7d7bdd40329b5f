//! Graceful shutdown: SIGTERM stops `plexus dev` and `plexus proxy` cleanly, and the agent
//! deregisters what it registered (seen after a restart on the same durable data dir).

use plexus_test::{Dev, TcpEcho, free_port};

use crate::{bin, client_echo_hcl_with_sidecar_ports, write_file};

#[tokio::test]
async fn sigterm_deregisters_and_exits_cleanly() {
    let echo = TcpEcho::start().await.unwrap();
    let (_dir, file) = write_file(
        "mesh.hcl",
        &client_echo_hcl_with_sidecar_ports(echo.port(), free_port()),
    );
    let data = tempfile::tempdir().unwrap();
    let mut dev = Dev::start_in(
        bin(),
        data.path(),
        &["--config-file", file.to_str().unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(dev.client.agent_services().await.unwrap().len(), 4);
    let mut proxy = dev.sidecar("echo").await.unwrap();
    plexus_test::eventually!(proxy.is_ready().await);

    let status = proxy.process.terminate().await.unwrap();
    assert!(
        status.success(),
        "proxy exit: {status:?}\n{}",
        proxy.process.output()
    );
    let status = dev.process.terminate().await.unwrap();
    assert!(
        status.success(),
        "dev exit: {status:?}\n{}",
        dev.process.output()
    );

    // Same durable store, no definitions: what the agent registered is gone.
    let again = Dev::start_in(bin(), data.path(), &[]).await.unwrap();
    assert!(again.client.agent_services().await.unwrap().is_empty());
    let catalog = again
        .client
        .catalog_services(Default::default())
        .await
        .unwrap();
    assert!(catalog.value.is_empty(), "{:?}", catalog.value);
}
