#!/bin/sh
# busybox udhcpc hook for the lab: print the event, never configure the interface
echo "udhcpc-event $1 iface=$interface ip=$ip mask=$subnet router=$router lease=$lease server=$serverid"
