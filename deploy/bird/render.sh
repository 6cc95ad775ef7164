#!/bin/sh
# Renders deploy/bird/bird.conf.in from environment parameters (the ConfigMap
# deploy/22-bird.yaml in the router DaemonSet; scripts/lib/announce-topo.sh in the tests):
#   ROUTER_ID      this node's IPv4 address (the BGP router id)
#   ANNOUNCE_TABLE the daemon's --announce-table              (default 4242)
#   LOCAL_AS       the tunnel nodes' AS                       (default 64513)
#   PEER_AS        the DC router's AS                         (default 64512)
#   PEER4, PEER6   the DC router's IPv4 / IPv6 address (an empty one disables that session)
#   BFD_MS         BFD transmit/receive interval in ms        (default 100)
#   BFD_MULT       BFD detection multiplier                   (default 3)
#   IFACE          interface pattern toward the DC router     (default "*")
#   render.sh TEMPLATE > bird.conf
set -eu
: "${ROUTER_ID:?ROUTER_ID (this node's IPv4 address) is required}"
dis4=no dis6=no
[ -n "${PEER4:-}" ] || { PEER4=192.0.2.1 dis4=yes; }
[ -n "${PEER6:-}" ] || { PEER6=2001:db8::1 dis6=yes; }
sed -e "s/@ROUTER_ID@/$ROUTER_ID/" -e "s/@TABLE@/${ANNOUNCE_TABLE:-4242}/g" \
    -e "s/@LOCAL_AS@/${LOCAL_AS:-64513}/" -e "s/@PEER_AS@/${PEER_AS:-64512}/g" \
    -e "s/@PEER4@/$PEER4/" -e "s/@PEER6@/$PEER6/" -e "s/@DISABLED4@/$dis4/" \
    -e "s/@DISABLED6@/$dis6/" -e "s/@BFD_MS@/${BFD_MS:-100}/g" -e "s/@BFD_MULT@/${BFD_MULT:-3}/" \
    -e "s/@IFACE@/${IFACE:-*}/" "$1"
