//! A simulated buyer, as the scenarios, the tokens and the recorder name
//! it.

/// A buyer: hot (`h<index>`) or cold (`u<index>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct User {
    pub hot: bool,
    pub index: u64,
}

impl User {
    /// The `user_id` the request carries.
    pub fn id(&self) -> String {
        format!("{}{}", if self.hot { 'h' } else { 'u' }, self.index)
    }
}
