//! The one place host bindings are generated, from the root `wit/` folder
//! (the guest SDK generates its side from the same files).

/// The `matcher` world.
pub mod matcher {
    wasmtime::component::bindgen!({
        world: "matcher",
        path: "../wit",
    });
}

/// The `policy` world.
pub mod policy {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit",
    });
}
