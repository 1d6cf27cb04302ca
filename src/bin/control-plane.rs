//! `control-plane`: the admin REST API (see the `control-plane` crate).

fn main() -> anyhow::Result<()> {
    control_plane::cli_main()
}
