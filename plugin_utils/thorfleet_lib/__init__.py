"""Code shared by thorfleet's filter plugins (filter_plugins/catalogue.py, images.py)."""
