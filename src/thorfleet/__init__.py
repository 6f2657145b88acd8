"""thorfleet: provision Jetson Thor inference nodes with Ansible."""

__version__ = "0.1.0"
