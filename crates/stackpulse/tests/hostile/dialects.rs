//! The four socket endpoints as one table.
