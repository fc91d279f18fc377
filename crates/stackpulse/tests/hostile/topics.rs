//! The hub's topic policy: ACLs, reserved `stack:*`, caps.
