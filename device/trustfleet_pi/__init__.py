"""trustfleet CPython device agent (Raspberry Pi): drivers around the device core."""
