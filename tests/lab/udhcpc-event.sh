#!/bin/sh
# busybox udhcpc hook for the lab: print the event, never configure the interface
# shellcheck disable=SC2154 # udhcpc passes these in the environment
echo "udhcpc-event $1 iface=$interface ip=$ip mask=$subnet router=$router lease=$lease server=$serverid"
