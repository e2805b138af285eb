//! Pod test harness.
