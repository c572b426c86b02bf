"""The P2P side of CoTrain: the hivemind DHT that peers and the server share, and the signed
progress records that peers publish on it (what the server shows as participants)."""
