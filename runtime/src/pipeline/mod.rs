//! The camera-frame pipeline (issue 6): raw frames in, stable hand-sign digits out.

pub mod frame;
