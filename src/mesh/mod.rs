//! The mesh as Istio sees it: the objects that decide what happens to traffic
//! (`inventory`), host-name rules (`hosts`), and the one evaluator of effective policy
//! (`effective`) that `doctor` explains and the mesh-policy writer consults.
//!
//! Pure: nothing here performs I/O or reads the clock.

pub mod effective;
pub mod hosts;
pub mod inventory;
pub mod matrix;
pub mod policy;

pub use effective::{Client, ClientMode, Mesh, Refusal, Traffic};
pub use inventory::{Inventory, ObjectError, ObjectRef, PeerMode};

#[cfg(test)]
mod tests;

/// An inventory of the objects in a YAML stream (tests build meshes this way).
#[cfg(test)]
pub(crate) fn inventory_of(yaml: &str) -> Inventory {
    let mut inv = Inventory::new();
    for doc in crate::config::yaml::documents(yaml) {
        inv.add(doc.unwrap().0, "default").unwrap();
    }
    inv
}
