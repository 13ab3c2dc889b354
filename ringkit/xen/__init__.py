"""The real Xen transport: Linux /dev/xen/{gntalloc,gntdev,evtchn} and xenstore."""
