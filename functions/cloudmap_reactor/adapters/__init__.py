"""Small AWS adapters, one job each. They translate AWS shapes and errors into the core's terms."""
