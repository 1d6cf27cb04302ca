//! `data-plane`: the MCP gateway (see the `data-plane` crate).

// Many small, short-lived allocations per call (HTTP, JSON-RPC, futures) across worker threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    data_plane::cli_main()
}
