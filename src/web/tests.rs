//! The web config file as exporter-toolkit reads it, and the limits' clock.
