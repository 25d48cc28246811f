"""This project's server beside other model servers (`make bench-peers`)."""
