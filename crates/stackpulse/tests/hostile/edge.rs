//! The HTTP edge: deployers, Origin/Host, content types, timeouts, proxies.
