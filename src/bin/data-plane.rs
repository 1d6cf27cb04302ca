//! `data-plane`: the MCP gateway (see the `data-plane` crate).

fn main() -> anyhow::Result<()> {
    data_plane::cli_main()
}
