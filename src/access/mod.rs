//! Who is asking, and may they: peer identity (and the helper process that
//! reads it for the sandboxed master), the policy file, and the decision
//! for each request.

pub mod ancestors;
pub mod decide;
pub mod peer;
pub mod policy;
pub mod policy_file;
pub mod proc_helper;
