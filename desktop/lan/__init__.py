"""The app's side of the LAN: finding servers (mDNS), pairing with them (pinned identity,
token in the OS keyring) and deciding which ones may be trusted with audio."""
