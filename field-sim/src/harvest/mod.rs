//! The simulated harvest: scenarios ([`scenario`]), the world model ([`world`]), offline
//! scoring of dispatch policies ([`score`]), hybrid replay of recorded combines ([`track`])
//! and the live run against a gateway ([`live`]).
pub mod live;
pub mod scenario;
pub mod score;
pub mod track;
pub mod world;

#[cfg(test)]
mod tests;
