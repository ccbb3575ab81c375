//! Both ends of Ferry's MQTT link. The store-and-forward uplink and `ferry-bridge` land with issue 4;
//! this crate exists now so the workspace layout is the final one.
