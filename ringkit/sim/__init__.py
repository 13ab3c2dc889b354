"""The simulated Xen: domains, grants, event channels and a xenstore on one Linux machine."""
