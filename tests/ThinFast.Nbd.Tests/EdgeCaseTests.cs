using System.Text.Json;
using ThinFast.IO;

namespace ThinFast.Nbd.Tests;

/// <summary>
/// Bad and odd requests, sent by nbdsh (libnbd with its client-side checks off) and by a raw
/// socket client inside the same nbdsh script for what libnbd cannot send at all. Each must get
/// the answer the spec asks for while another connection (handle h) keeps being served and the
/// volume's data stays as it was.
/// </summary>
public class EdgeCaseTests
{
    // Python helpers shared by the scripts: a minimal raw NBD client over the unix socket.
    private const string RawClient = """
        import json, socket, struct
        EINVAL, ENOSPC, EPERM, ENOTSUP, EOVERFLOW = 22, 28, 1, 95, 75
        def err(f):
            try:
                f()
                return 0
            except nbd.Error as e:
                return e.errnum
        def recvn(s, n):
            b = b''
            while len(b) < n:
                c = s.recv(n - len(b))
                if not c:
                    return None
                b += c
            return b
        def raw_connect(path, client_flags=3):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(20)
            s.connect(path)
            assert recvn(s, 18)[:16] == b'NBDMAGICIHAVEOPT'
            s.sendall(struct.pack('>I', client_flags))
            return s
        def option(s, opt, data=b''):
            s.sendall(b'IHAVEOPT' + struct.pack('>II', opt, len(data)) + data)
            replies = []
            while True:
                hdr = recvn(s, 20)
                if hdr is None:
                    return replies + ['closed']
                magic, o, typ, ln = struct.unpack('>QIII', hdr)
                body = recvn(s, ln)
                replies.append(typ)
                if typ == 1 or typ & 0x80000000:
                    return replies
        def go(s, name=b'disk'):
            r = option(s, 7, struct.pack('>I', len(name)) + name + struct.pack('>H', 0))
            assert r[-1] == 1, r
        def request(s, typ, off, length, flags=0, cookie=7, payload=b''):
            s.sendall(struct.pack('>IHHQQI', 0x25609513, flags, typ, cookie, off, length) + payload)
        def simple_reply(s):
            r = recvn(s, 16)
            if r is None:
                return 'closed'
            magic, error, cookie = struct.unpack('>IIQ', r)
            assert magic == 0x67446698, hex(magic)
            return error
        """;

    [Theory]
    [InlineData(NbdTransportMode.IoUring)]
    [InlineData(NbdTransportMode.Sockets)]
    public async Task BadRequestsGetTheSpecifiedErrorsAndTheConnectionSurvives(NbdTransportMode transport)
    {
        await using var h = ServerHarness.Start(options: ServerHarness.Using(transport));
        var script = RawClient + $$"""

            h.set_strict_mode(0)
            size = h.get_size()
            h.pwrite(b'\x5a' * 65536, 0)
            res = {}
            res['read_past_end'] = err(lambda: h.pread(4096, size - 512))
            res['read_offset_beyond_end'] = err(lambda: h.pread(512, size + 4096))
            res['write_past_end'] = err(lambda: h.pwrite(b'x' * 4096, size - 512))
            res['trim_past_end'] = err(lambda: h.trim(4096, size))
            res['zero_past_end'] = err(lambda: h.zero(4096, size))
            res['cache_past_end'] = err(lambda: h.cache(4096, size))
            res['read_zero_length'] = err(lambda: h.pread(0, 0))
            res['read_unknown_flag'] = err(lambda: h.pread(512, 0, flags=0x40))
            res['write_df'] = err(lambda: h.pwrite(b'x' * 512, 0, flags=nbd.CMD_FLAG_DF))
            res['trim_no_hole'] = err(lambda: h.trim(512, 0, flags=nbd.CMD_FLAG_NO_HOLE))
            res['flush_fua'] = err(lambda: h.flush(flags=nbd.CMD_FLAG_FUA))
            res['read_oversize'] = err(lambda: h.pread(48 * 1024 * 1024, 0))
            res['write_oversize_drained'] = err(lambda: h.pwrite(b'y' * (40 * 1024 * 1024), 0))
            res['fast_zero_no_hole'] = err(lambda: h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE))
            res['block_status_without_context'] = err(lambda: h.block_status(65536, 0, lambda *a: 0))
            res['cache'] = err(lambda: h.cache(65536, 0))
            res['unaligned_write'] = err(lambda: h.pwrite(b'\x5a' * 3, 65535))
            res['still_serving'] = h.pread(65538, 0) == b'\x5a' * 65538
            print(json.dumps(res))
            """;
        var result = await Tool.NbdshAsync(h.UnixUri(), script);
        var res = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(result.StdOut.Trim())!;
        const int einval = 22, enospc = 28, enotsup = 95;
        Assert.Equal(einval, res["read_past_end"].GetInt32());
        Assert.Equal(einval, res["read_offset_beyond_end"].GetInt32());
        Assert.Equal(enospc, res["write_past_end"].GetInt32());
        Assert.Equal(einval, res["trim_past_end"].GetInt32());
        Assert.Equal(enospc, res["zero_past_end"].GetInt32());
        Assert.Equal(einval, res["cache_past_end"].GetInt32());
        Assert.Equal(einval, res["read_zero_length"].GetInt32());
        Assert.Equal(einval, res["read_unknown_flag"].GetInt32());
        Assert.Equal(einval, res["write_df"].GetInt32());
        Assert.Equal(einval, res["trim_no_hole"].GetInt32());
        Assert.Equal(0, res["flush_fua"].GetInt32());
        Assert.Equal(einval, res["read_oversize"].GetInt32());
        Assert.Equal(einval, res["write_oversize_drained"].GetInt32());
        Assert.Equal(enotsup, res["fast_zero_no_hole"].GetInt32());
        Assert.Equal(einval, res["block_status_without_context"].GetInt32());
        Assert.Equal(0, res["cache"].GetInt32());
        Assert.Equal(0, res["unaligned_write"].GetInt32());
        Assert.True(res["still_serving"].GetBoolean(), result.StdOut);
        // None of the refused writes reached the volume.
        var image = h.Volume.ToArray();
        Tool.AssertFilled(image, 0, 65538, 0x5a);
        Tool.AssertFilled(image, 65538, 1 << 20, 0);
        Assert.Equal(0, image[^1]);
    }

    [Theory]
    [InlineData(NbdTransportMode.IoUring)]
    [InlineData(NbdTransportMode.Sockets)]
    public async Task BrokenClientsAreDroppedWithoutDisturbingAnotherClient(NbdTransportMode transport)
    {
        await using var h = ServerHarness.Start(options: ServerHarness.Using(transport));
        var script = RawClient + $$"""

            path = '{{h.SocketPath}}'
            h.pwrite(b'\x33' * 65536, 0)
            res = {}

            # Handshake: unknown options are refused and the handshake goes on; bad client flags close.
            s = raw_connect(path)
            res['unknown_option'] = option(s, 99)
            res['list_with_data'] = option(s, 3, b'junk')
            res['set_meta_before_structured'] = option(s, 10, struct.pack('>I', 4) + b'disk' + struct.pack('>I', 0))
            res['info_truncated'] = option(s, 6, b'\x00\x00')
            res['info_unknown_export'] = option(s, 6, struct.pack('>I', 6) + b'nosuch' + struct.pack('>H', 0))
            res['starttls'] = option(s, 5)
            go(s)
            # Transmission: unknown command and unknown flag are refused, the connection stays.
            request(s, 99, 0, 512)
            res['unknown_command'] = simple_reply(s)
            request(s, 0, 0, 512, flags=0x40)
            res['unknown_flag'] = simple_reply(s)
            request(s, 1, 0, 4096, flags=0x02, payload=b'\x77' * 4096)
            res['write_with_no_hole_flag'] = simple_reply(s)
            request(s, 7, 0, 65536)
            res['block_status_simple'] = simple_reply(s)
            request(s, 0, 0, 512, cookie=9)
            res['read_after_errors'] = simple_reply(s)
            res['read_data_ok'] = recvn(s, 512) == b'\x33' * 512
            request(s, 2, 0, 0)
            res['disc_closes'] = recvn(s, 1) is None
            s.close()

            s = raw_connect(path, client_flags=7)
            res['bad_client_flags_closed'] = recvn(s, 1) is None
            s.close()

            # The old EXPORT_NAME ending: size and flags, plus 124 zero bytes unless NO_ZEROES.
            s = raw_connect(path, client_flags=1)
            s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, 4) + b'disk')
            reply = recvn(s, 134)
            res['export_name_size'] = struct.unpack('>Q', reply[:8])[0]
            res['export_name_flags'] = struct.unpack('>H', reply[8:10])[0]
            res['export_name_zeroes'] = reply[10:] == bytes(124)
            request(s, 0, 0, 512, cookie=5)
            res['export_name_read'] = simple_reply(s) == 0 and recvn(s, 512) == b'\x33' * 512
            s.close()
            s = raw_connect(path)
            s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, 0))
            res['export_name_default_size'] = struct.unpack('>Q', recvn(s, 10)[:8])[0]
            s.close()
            s = raw_connect(path)
            s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, 6) + b'nosuch')
            res['export_name_unknown_closed'] = recvn(s, 1) is None
            s.close()

            # A write announcing more payload than the server will drain: EINVAL, then close.
            s = raw_connect(path)
            go(s)
            request(s, 1, 0, 0xF0000000)
            res['huge_write'] = simple_reply(s)
            res['huge_write_closed'] = recvn(s, 1) is None
            s.close()

            # Disconnect in the middle of a WRITE payload: nothing of it may land.
            s = raw_connect(path)
            go(s)
            request(s, 1, 0, 1 << 20, payload=b'\xee' * 1000)
            s.close()

            # Garbage instead of a request header: the stream is lost, the server hangs up.
            s = raw_connect(path)
            go(s)
            s.sendall(b'\xde\xad\xbe\xef' * 7)
            res['bad_magic_closed'] = recvn(s, 1) is None
            s.close()

            res['other_client_still_served'] = h.pread(65536, 0) == b'\x33' * 65536
            print(json.dumps(res))
            """;
        var result = await Tool.NbdshAsync(h.UnixUri(), script);
        var res = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(result.StdOut.Trim())!;
        const uint ack = 1, unsup = 0x80000001, policy = 0x80000002, invalid = 0x80000003, unknown = 0x80000006;
        Assert.Equal([unsup], res["unknown_option"].EnumerateArray().Select(e => e.GetUInt32()));
        Assert.Equal([invalid], res["list_with_data"].EnumerateArray().Select(e => e.GetUInt32()));
        Assert.Equal([invalid], res["set_meta_before_structured"].EnumerateArray().Select(e => e.GetUInt32()));
        Assert.Equal([invalid], res["info_truncated"].EnumerateArray().Select(e => e.GetUInt32()));
        Assert.Equal([unknown], res["info_unknown_export"].EnumerateArray().Select(e => e.GetUInt32()));
        Assert.Equal([policy], res["starttls"].EnumerateArray().Select(e => e.GetUInt32()));
        Assert.NotEqual(ack, unsup);
        Assert.Equal(22, res["unknown_command"].GetInt32());
        Assert.Equal(22, res["unknown_flag"].GetInt32());
        Assert.Equal(22, res["write_with_no_hole_flag"].GetInt32());
        Assert.Equal(22, res["block_status_simple"].GetInt32());
        Assert.Equal(0, res["read_after_errors"].GetInt32());
        Assert.True(res["read_data_ok"].GetBoolean());
        Assert.True(res["disc_closes"].GetBoolean());
        Assert.True(res["bad_client_flags_closed"].GetBoolean());
        Assert.Equal(ServerHarness.DefaultSize, res["export_name_size"].GetInt64());
        Assert.Equal(0x0d6d, res["export_name_flags"].GetInt32()); // no SEND_DF without structured replies
        Assert.True(res["export_name_zeroes"].GetBoolean());
        Assert.True(res["export_name_read"].GetBoolean());
        Assert.Equal(ServerHarness.DefaultSize, res["export_name_default_size"].GetInt64());
        Assert.True(res["export_name_unknown_closed"].GetBoolean());
        Assert.Equal(22, res["huge_write"].GetInt32());
        Assert.True(res["huge_write_closed"].GetBoolean());
        Assert.True(res["bad_magic_closed"].GetBoolean());
        Assert.True(res["other_client_still_served"].GetBoolean());

        var image = h.Volume.ToArray();
        Tool.AssertFilled(image, 0, 65536, 0x33);
        Assert.Equal(-1, image.AsSpan().IndexOf((byte)0xee));
        Assert.Equal(-1, image.AsSpan().IndexOf((byte)0x77));
        // Every broken connection is gone; only h's remains until the script ended.
        await WaitUntilAsync(() => h.Server.ConnectionCount == 0);
    }

    [Theory]
    [InlineData(NbdTransportMode.IoUring)]
    [InlineData(NbdTransportMode.Sockets)]
    public async Task ClientsThatStallOrHoardAreDroppedAndTheLimitIsEnforced(NbdTransportMode transport)
    {
        await using var h = ServerHarness.Start(options: ServerHarness.Using(transport) with
        {
            MaxConnections = 3,
            HandshakeTimeout = TimeSpan.FromSeconds(1),
            SendTimeout = TimeSpan.FromSeconds(1),
        });
        var script = RawClient + $$"""

            import time
            path = '{{h.SocketPath}}'
            res = {}
            h.pwrite(b'\x61' * (1 << 20), 0)
            # h plus two clients idling in the handshake fill the limit of 3: a fourth is answered
            # ERR_SHUTDOWN (the message says why) for GO, and for any other option.
            idle = [raw_connect(path), raw_connect(path)]
            time.sleep(0.2)
            s = raw_connect(path)
            res['over_limit'] = option(s, 7, struct.pack('>I', 4) + b'disk' + struct.pack('>H', 0))
            res['over_limit_list'] = option(s, 3)
            s.close()
            # The idlers are dropped after the handshake timeout.
            res['idle_dropped'] = all(recvn(c, 1) is None for c in idle)
            time.sleep(0.3)  # the server forgets a dropped connection just after closing it

            # A client that asks for 64 MiB of reads and never reads the replies fills the socket;
            # after the send timeout it is dropped, and h's large reads keep working meanwhile.
            hog = raw_connect(path)
            go(hog)
            for i in range(64):
                request(hog, 0, 0, 1 << 20, cookie=i)
            t = time.monotonic()
            served = 0
            while time.monotonic() - t < 2.5:
                if h.pread(1 << 20, 0) == b'\x61' * (1 << 20):
                    served += 1
            res['served_while_hogged'] = served
            hog.settimeout(10)
            got = 0
            try:
                while True:
                    c = hog.recv(1 << 20)
                    if not c:
                        break
                    got += len(c)
            except OSError:
                pass
            res['hog_got_bytes'] = got
            res['still_serving'] = h.pread(4096, 0) == b'\x61' * 4096
            print(json.dumps(res))
            """;
        var result = await Tool.NbdshAsync(h.UnixUri(), script, TimeSpan.FromSeconds(60));
        var res = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(result.StdOut.Trim())!;
        const uint shutdown = 0x80000007;
        Assert.Equal([shutdown], res["over_limit"].EnumerateArray().Select(e => e.GetUInt32()));
        Assert.Equal([shutdown], res["over_limit_list"].EnumerateArray().Select(e => e.GetUInt32()));
        Assert.True(res["idle_dropped"].GetBoolean(), result.StdOut);
        Assert.True(res["served_while_hogged"].GetInt32() > 10, result.StdOut);
        // The hog was cut off long before all 64 MiB of replies were delivered.
        Assert.True(res["hog_got_bytes"].GetInt64() < 64L << 20, result.StdOut);
        Assert.True(res["still_serving"].GetBoolean());
        Assert.Contains(h.Log, m => m.Contains("handshake not finished"));
        Assert.Contains(h.Log, m => m.Contains("has not read its replies"));
    }

    [Fact]
    public async Task VolumeFailuresAndReadOnlyExportsMapToNbdErrors()
    {
        var origin = new MemoryVolume(4 * 1024 * 1024, name: "origin");
        await origin.WriteAsync(0, new byte[] { 0x4f, 0x4b });
        await using var h = ServerHarness.Start(extraExports: new NbdExport(origin, readOnly: true));
        h.Volume.FailingRange = (8 << 20, 1 << 20, BlockError.IoError);
        var script = RawClient + $$"""

            res = {}
            res['read_io_error'] = err(lambda: h.pread(4096, 8 << 20))
            res['write_io_error'] = err(lambda: h.pwrite(b'z' * 4096, (8 << 20) + 4096))
            chunks = []
            data = h.pread_structured(70000, 12345, lambda sub, off, status, error: chunks.append((off, len(sub), status)) or 0, nbd.CMD_FLAG_DF)
            res['df_read'] = data == bytes(70000) and chunks == [(12345, 70000, nbd.READ_DATA)]
            # Without DF a read of a wholly unallocated range is one OFFSET_HOLE chunk.
            chunks = []
            data = h.pread_structured(1 << 20, 16 << 20, lambda sub, off, status, error: chunks.append((off, len(sub), status)) or 0)
            res['hole_read'] = data == bytes(1 << 20) and chunks == [(16 << 20, 1 << 20, nbd.READ_HOLE)]
            h.pwrite(b'\x01', (16 << 20) + 5000)
            chunks = []
            data = h.pread_structured(1 << 20, 16 << 20, lambda sub, off, status, error: chunks.append((off, len(sub), status)) or 0)
            res['data_read'] = data[5000] == 1 and chunks == [(16 << 20, 1 << 20, nbd.READ_DATA)]
            ro = nbd.NBD()
            ro.set_strict_mode(0)
            ro.connect_uri('{{h.UnixUri("origin")}}')
            res['ro_is_read_only'] = ro.is_read_only()
            res['ro_write'] = err(lambda: ro.pwrite(b'x' * 512, 0))
            res['ro_trim'] = err(lambda: ro.trim(65536, 0))
            res['ro_zero'] = err(lambda: ro.zero(65536, 0))
            res['ro_fua_read'] = err(lambda: ro.pread(512, 0, nbd.CMD_FLAG_FUA))
            res['ro_read'] = ro.pread(2, 0) == b'OK'
            res['ro_flush'] = err(lambda: ro.flush())
            print(json.dumps(res))
            """;
        var result = await Tool.NbdshAsync(h.UnixUri(), script);
        var res = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(result.StdOut.Trim())!;
        Assert.Equal(5, res["read_io_error"].GetInt32());
        Assert.Equal(5, res["write_io_error"].GetInt32());
        Assert.True(res["df_read"].GetBoolean());
        Assert.True(res["hole_read"].GetBoolean(), result.StdOut);
        Assert.True(res["data_read"].GetBoolean(), result.StdOut);
        Assert.True(res["ro_is_read_only"].GetBoolean());
        Assert.Equal(1, res["ro_write"].GetInt32());
        Assert.Equal(1, res["ro_trim"].GetInt32());
        Assert.Equal(1, res["ro_zero"].GetInt32());
        Assert.Equal(22, res["ro_fua_read"].GetInt32());
        Assert.True(res["ro_read"].GetBoolean());
        Assert.Equal(0, res["ro_flush"].GetInt32());
        Assert.Equal([0x4f, 0x4b, 0], origin.ToArray()[..3]);
        Assert.Contains(h.Log, m => m.Contains("injected IoError"));

        // A full pool is ENOSPC, a volume turned read-only underneath is EPERM.
        h.Volume.FailingRange = (0, 4096, BlockError.NoSpace);
        var full = await Tool.NbdshAsync(h.UnixUri(), RawClient + "\nprint(err(lambda: h.pwrite(b'q' * 4096, 0)))");
        Assert.Equal("28", full.StdOut.Trim());
        h.Volume.FailingRange = (0, 4096, BlockError.ReadOnly);
        var readOnly = await Tool.NbdshAsync(h.UnixUri(), RawClient + "\nprint(err(lambda: h.zero(4096, 0)))");
        Assert.Equal("1", readOnly.StdOut.Trim());
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        for (int i = 0; i < 100 && !condition(); i++)
            await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.True(condition());
    }
}
