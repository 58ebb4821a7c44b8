//! The operator's credentials: the admin key (`admin_key`), dashboard sessions and the
//! same-origin rule for writes made with them (`session`), and the wait imposed on
//! repeated wrong keys (`throttle`).
//!
//! Types and checks only: no route and no handler. The admin layer (`api::auth`) and
//! the login and logout handlers (`dashboard::session`) use them; the router's
//! `Services` (`state`) hold them. This module depends on none of the router's other
//! modules.

mod admin_key;
mod session;
mod throttle;

pub use admin_key::{resolve_admin_key, AdminKey};
pub use session::{same_origin, Sessions};
pub use throttle::LoginThrottle;
