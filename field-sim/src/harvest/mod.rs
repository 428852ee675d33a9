//! The simulated harvest: scenarios ([`scenario`]), the world model ([`world`]), offline
//! scoring of dispatch policies ([`score`]) and the live run against a gateway ([`live`]).
pub mod live;
pub mod scenario;
pub mod score;
pub mod world;

#[cfg(test)]
mod tests;
