//! The connection driver: admission, init deadline, idle timeout, slots.
