//! x86-64 kernel platform: to be written (issue 3).
