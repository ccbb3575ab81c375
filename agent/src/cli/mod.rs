//! The command line's client side: `ferry devices|latest|query|tail|status` over the local API.
