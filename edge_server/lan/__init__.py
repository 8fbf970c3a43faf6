"""The server's doors onto the LAN: who may connect (auth), who the server is (identity,
TLS), how it is found (mDNS discovery) and how a client pairs with it."""
