"""Many machines restored at once from one multicast stream (udpcast): stream.py holds the
format and order, udpcast.py the udp-sender and udp-receiver processes, send.py and
receive.py the two jobs the engine runs (docs/multicast.md)."""
