//! `mcpgw`: runs the control plane and the data plane together (the embedded default).
fn main() -> anyhow::Result<()> {
    control_plane::cli_main()
}
