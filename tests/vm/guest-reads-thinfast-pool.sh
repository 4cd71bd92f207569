#!/bin/sh
set -e
# Run inside the guest by kernel-roundtrip.sh. /dev/vda = ThinFast metadata, /dev/vdb = data (64 MiB, 64 KiB blocks).
dmsetup create pool --table "0 131072 thin-pool /dev/vda /dev/vdb 128 32"
dmsetup status pool
dmsetup create v1 --table "0 32768 thin /dev/mapper/pool 1"
dmsetup create v1s --table "0 32768 thin /dev/mapper/pool 2"
md5sum /dev/mapper/v1 /dev/mapper/v1s
# The kernel writes into ThinFast's pool: break sharing on v1 block 2.
echo written-by-kernel | dd of=/dev/mapper/v1 bs=512 seek=256 conv=notrunc oflag=direct 2>/dev/null
dmsetup message pool 0 "create_thin 9"
sync
dmsetup remove v1
dmsetup remove v1s
dmsetup status pool
dmsetup remove pool
echo done
