//! GraphQL cost limits: fragments, aliases, body size.
