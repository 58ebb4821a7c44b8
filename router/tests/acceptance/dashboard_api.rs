//! The dashboard API: endpoints, parameters and the agreement of every figure.
