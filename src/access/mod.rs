//! Who is asking, and may they: peer identity, the policy file, and the
//! decision for each request.

pub mod decide;
pub mod peer;
pub mod policy;
pub mod policy_file;
