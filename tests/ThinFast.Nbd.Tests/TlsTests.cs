using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using ThinFast.Testing;

namespace ThinFast.Nbd.Tests;

/// <summary>One throw-away PKI (openssl) for the TLS tests of a class.</summary>
public sealed class PkiFixture : IDisposable
{
    public TestCertificates Pki { get; } = TestCertificates.Create();

    public void Dispose() => Pki.Dispose();
}

/// <summary>
/// NBD over TLS with TLS required, as libnbd (nbdinfo, nbdsh), qemu-img and qemu-io see it, plus
/// a raw client for what those clients never send: options around STARTTLS out of order.
/// </summary>
public class TlsTests(PkiFixture fixture) : IClassFixture<PkiFixture>
{
    private const uint Ack = 1, ErrInvalid = 0x80000003, ErrTlsReqd = 0x80000005;
    private const uint OptExportName = 1, OptList = 3, OptStartTls = 5, OptInfo = 6, OptGo = 7, OptStructuredReply = 8;

    private readonly TestCertificates _pki = fixture.Pki;

    private ServerHarness StartTls(bool verifyPeer = true, NbdServerOptions? options = null) =>
        ServerHarness.Start(options: (options ?? ServerHarness.TestOptions) with { Tls = NbdTlsCredentials.LoadFolder(_pki.ServerFolder, verifyPeer) });

    private static string TlsUri(ServerHarness h, string certificates) => $"nbds://127.0.0.1:{h.Tcp.Port}/disk?tls-certificates={certificates}";

    private static string QemuTlsObject(string certificates) => $"tls-creds-x509,id=tls0,dir={certificates},endpoint=client";

    private static string QemuImageOpts(ServerHarness h) => $"driver=nbd,host=127.0.0.1,port={h.Tcp.Port},export=disk,tls-creds=tls0";

    [Fact]
    public async Task NbdinfoOverTlsSeesTheSizeAndReadsTheData()
    {
        await using var h = StartTls();
        var data = Tool.Pattern(1 << 20, 11);
        await h.Volume.WriteAsync(3 << 20, data);

        var info = await Tool.RunOkAsync("nbdinfo", TlsUri(h, _pki.ClientFolder));
        Assert.Contains("with TLS", info.StdOut);
        Assert.Contains($"export-size: {ServerHarness.DefaultSize}", info.StdOut);

        // The data, over TCP and over the unix socket (qemu-nbd also does TLS on unix sockets).
        string expected = Convert.ToHexStringLower(SHA256.HashData(data));
        const string Script = "import hashlib; assert h.get_tls_negotiated(); print(hashlib.sha256(h.pread(1 << 20, 3 << 20)).hexdigest())";
        var tcp = await NbdshOverTlsAsync(TlsUri(h, _pki.ClientFolder), Script);
        Assert.Equal(expected, tcp.StdOut.Trim());
        var unix = await NbdshOverTlsAsync($"nbds+unix:///disk?socket={h.SocketPath}&tls-certificates={_pki.ClientFolder}", Script);
        Assert.Equal(expected, unix.StdOut.Trim());
    }

    [Fact]
    public async Task QemuImgAndQemuIoWriteAndReadBackOverTls()
    {
        await using var h = StartTls();
        var source = h.TempFile("source.raw");
        var image = Tool.Pattern(4 << 20, 12);
        await File.WriteAllBytesAsync(source, image, TestContext.Current.CancellationToken);

        await Tool.RunOkAsync("qemu-img", "convert", "-n", "--object", QemuTlsObject(_pki.ClientFolder), "-f", "raw", source,
            "--target-image-opts", QemuImageOpts(h));
        Tool.AssertSame(image, h.Volume.ToArray().AsSpan(0, image.Length).ToArray());

        var io = await Tool.RunOkAsync("qemu-io", "--object", QemuTlsObject(_pki.ClientFolder), "--image-opts", QemuImageOpts(h),
            "-c", "write -P 0x5a 8M 2M",
            "-c", "write -z 12M 1M",
            "-c", "flush",
            "-c", "read -P 0x5a 8M 2M",
            "-c", "read -P 0 12M 1M");
        Assert.DoesNotContain("fail", io.StdOut + io.StdErr);
        Assert.Contains("read 2097152/2097152 bytes at offset 8388608", io.StdOut);
        Tool.AssertFilled(h.Volume.ToArray(), 8 << 20, 2 << 20, 0x5a);
        Assert.True(h.Volume.FlushCount >= 1);

        var compare = await Tool.RunAsync("qemu-img", ["compare", "--object", QemuTlsObject(_pki.ClientFolder), "--image-opts",
            $"driver=raw,file.driver=file,file.filename={source}", QemuImageOpts(h)]);
        // The volume is larger than the source and holds the qemu-io writes past it.
        Assert.True(compare.ExitCode == 1 && compare.StdOut.Contains($"offset {8 << 20}"), compare.ToString());
    }

    [Fact]
    public async Task PlaintextClientsAreToldTlsIsRequiredAndReachNoData()
    {
        await using var h = StartTls();
        h.Volume.CountReadsFrom = 0;

        var nbdinfo = await Tool.RunAsync("nbdinfo", ["--size", h.TcpUri()]);
        Assert.NotEqual(0, nbdinfo.ExitCode);
        Assert.DoesNotContain(ServerHarness.DefaultSize.ToString(), nbdinfo.StdOut);
        // libnbd reports the refusal, and its debug log shows the server's ERR_TLS_REQD message.
        var nbdsh = await Tool.RunAsync("nbdsh", ["-c", $"""
            h.set_debug(True)
            h.set_tls(nbd.TLS_DISABLE)
            try:
                h.connect_uri('{h.UnixUri()}')
            except nbd.Error as e:
                print('refused:', e)
            else:
                print('connected, size', h.get_size())
            """]);
        Assert.Contains("refused:", nbdsh.StdOut);
        Assert.DoesNotContain("connected", nbdsh.StdOut);
        Assert.Contains("server error message: TLS is required: negotiate NBD_OPT_STARTTLS first", nbdsh.StdErr);

        // qemu names the error: it maps NBD_REP_ERR_TLS_REQD to "TLS negotiation required".
        var qemu = await Tool.RunAsync("qemu-img", ["info", h.TcpUri()]);
        Assert.NotEqual(0, qemu.ExitCode);
        Assert.Contains("TLS negotiation required before option 7 (go)", qemu.StdErr);
        Assert.Contains("server reported: TLS is required", qemu.StdErr);

        // Byte by byte: every option but STARTTLS and ABORT gets ERR_TLS_REQD, and EXPORT_NAME,
        // which has no error reply, closes the connection.
        var cancel = TestContext.Current.CancellationToken;
        using (var raw = await OptionClient.ConnectAsync(h.SocketPath, cancel))
        {
            foreach (var (option, data) in new[] { (OptList, Array.Empty<byte>()), (OptStructuredReply, []), (OptInfo, GoData("disk")), (OptGo, GoData("disk")) })
            {
                var replies = await raw.OptionAsync(option, data, cancel);
                Assert.Equal([ErrTlsReqd], replies.Select(r => r.Type));
            }
            await Assert.ThrowsAnyAsync<IOException>(() => raw.OptionAsync(OptExportName, "disk"u8.ToArray(), cancel));
        }
        Assert.Equal(0, h.Volume.CountedReads);
        Assert.Contains(h.Log, l => l.Contains("NBD_OPT_EXPORT_NAME before STARTTLS"));
    }

    [Fact]
    public async Task ClientsWithoutACaSignedClientCertificateAreRefusedWhileAGoodClientKeepsWorking()
    {
        await using var h = StartTls();
        string nbdinfo = Tool.Require("nbdinfo");
        // The good connection (h) keeps reading and writing while the bad clients' handshakes fail.
        var script = $$"""
            import subprocess
            assert h.get_tls_negotiated()
            bad = [subprocess.Popen(['{{nbdinfo}}', '--size', 'nbds://127.0.0.1:{{h.Tcp.Port}}/disk?tls-certificates=' + d],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for d in ['{{_pki.SelfSignedClientFolder}}', '{{_pki.NoCertificateClientFolder}}', '{{_pki.ServerOnlyClientFolder}}'] * 2]
            rounds = 0
            while rounds < 20 or any(p.poll() is None for p in bad):
                block = bytes([rounds % 251 + 1]) * 65536
                h.pwrite(block, rounds * 65536)
                assert h.pread(65536, rounds * 65536) == block
                rounds += 1
            for p in bad:
                out, err = p.communicate()
                print('bad client exit', p.returncode, 'stdout', repr(out.strip()))
            print('good rounds', rounds)
            """;
        var result = await NbdshOverTlsAsync(TlsUri(h, _pki.ClientFolder), script);
        var exits = result.StdOut.Split('\n').Where(l => l.StartsWith("bad client exit", StringComparison.Ordinal)).ToList();
        Assert.Equal(6, exits.Count);
        Assert.All(exits, l => Assert.StartsWith("bad client exit 1 stdout ''", l));
        Assert.Contains("good rounds", result.StdOut);
        Assert.Equal(2, h.Log.Count(l => l.Contains("TLS handshake failed: client certificate 'CN=intruder' refused")));
        Assert.Equal(2, h.Log.Count(l => l.Contains("TLS handshake failed: the client sent no certificate")));
        Assert.Equal(2, h.Log.Count(l => l.Contains("TLS handshake failed: client certificate 'CN=server-only' refused")));

        // And afterwards new good clients are served.
        var info = await Tool.RunOkAsync("nbdinfo", "--size", TlsUri(h, _pki.ClientFolder));
        Assert.Equal(ServerHarness.DefaultSize.ToString(), info.StdOut.Trim());
    }

    [Fact]
    public async Task WithoutPeerVerificationAClientWithoutACertificateIsServed()
    {
        await using var h = StartTls(verifyPeer: false);
        var info = await Tool.RunOkAsync("nbdinfo", TlsUri(h, _pki.NoCertificateClientFolder));
        Assert.Contains("with TLS", info.StdOut);
        // TLS is still required.
        var plain = await Tool.RunAsync("qemu-img", ["info", h.TcpUri()]);
        Assert.Contains("TLS negotiation required", plain.StdErr);
    }

    [Fact]
    public async Task BytesSentAfterStartTlsBeforeItsReplyDropTheClient()
    {
        var cancel = TestContext.Current.CancellationToken;
        await using var h = StartTls();
        using var raw = await OptionClient.ConnectAsync(h.SocketPath, cancel);
        // STARTTLS and, in the same write, an option meant to be read as if it came over TLS.
        byte[] injected = [.. OptionClient.Header(OptStartTls, 0), .. OptionClient.Header(OptGo, 6), .. GoData("")];
        await raw.SendRawAsync(injected, cancel);
        Assert.Equal(0, await raw.ReadToEndAsync(cancel));
        Assert.True(SpinWait.SpinUntil(() => h.Log.Any(l => l.Contains("bytes after NBD_OPT_STARTTLS")), TimeSpan.FromSeconds(10)),
            string.Join(" | ", h.Log));
        Assert.Contains(h.Log, l => l.Contains($"client sent {injected.Length - 16} bytes after NBD_OPT_STARTTLS"));
    }

    [Fact]
    public async Task AClientThatStallsInTheTlsHandshakeIsDroppedByTheHandshakeTimeout()
    {
        var cancel = TestContext.Current.CancellationToken;
        await using var h = StartTls(options: ServerHarness.TestOptions with { HandshakeTimeout = TimeSpan.FromSeconds(1) });
        using var raw = await OptionClient.ConnectAsync(h.SocketPath, cancel);
        Assert.Equal([Ack], (await raw.OptionAsync(OptStartTls, [], cancel)).Select(r => r.Type));
        // No ClientHello follows: the server's handshake waits, until the timeout ends it.
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        limit.CancelAfter(TimeSpan.FromSeconds(20));
        Assert.Equal(0, await raw.ReadToEndAsync(limit.Token));
        Assert.True(SpinWait.SpinUntil(() => h.Log.Any(l => l.Contains("TLS handshake failed")), TimeSpan.FromSeconds(10)), string.Join(" | ", h.Log));
        Assert.Contains(h.Log, l => l.Contains("handshake not finished within"));
        // The connection leaves the server's table just after its log line.
        Assert.True(SpinWait.SpinUntil(() => h.Server.ConnectionCount == 0, TimeSpan.FromSeconds(10)), $"{h.Server.ConnectionCount} connections still open");
    }

    [Fact]
    public async Task AfterStartTlsOptionsRunOverTlsAndASecondStartTlsIsAnError()
    {
        var cancel = TestContext.Current.CancellationToken;
        await using var h = StartTls();
        var data = Tool.Pattern(4096, 13);
        await h.Volume.WriteAsync(4096, data);
        using var raw = await OptionClient.ConnectAsync(h.SocketPath, cancel);
        Assert.Equal([Ack], (await raw.OptionAsync(OptStartTls, [], cancel)).Select(r => r.Type));
        await raw.UpgradeAsync(_pki.ClientFolder, cancel);

        var again = await raw.OptionAsync(OptStartTls, [], cancel);
        Assert.Equal(ErrInvalid, again.Single().Type);
        Assert.Contains("TLS is already active", again.Single().Data);
        Assert.Equal(Ack, (await raw.OptionAsync(OptGo, GoData("disk"), cancel))[^1].Type);
        // A simple READ over TLS.
        var read = await raw.ReadAsync(4096, 4096, cancel);
        Tool.AssertSame(data, read);
    }

    /// <summary>nbdsh with handle h connected to a TLS URI: nbdsh's own -u refuses URIs naming
    /// local files (tls-certificates) unless the script allows them first.</summary>
    private static async Task<ToolResult> NbdshOverTlsAsync(string uri, string script)
    {
        string connected = $"h.set_uri_allow_local_file(True)\nh.connect_uri('{uri}')\n{script}";
        var result = await Tool.RunAsync("nbdsh", ["-c", connected]);
        Assert.True(result.ExitCode == 0, $"nbdsh script failed: {result}\n--- script\n{connected}");
        return result;
    }

    private static byte[] GoData(string export)
    {
        var name = Encoding.UTF8.GetBytes(export);
        var data = new byte[4 + name.Length + 2];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        return data;
    }

    /// <summary>An option-phase client over a Stream that STARTTLS can swap for an SslStream.</summary>
    private sealed class OptionClient : IDisposable
    {
        private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        private Stream _stream = null!;

        public static async Task<OptionClient> ConnectAsync(string socketPath, CancellationToken cancel)
        {
            var client = new OptionClient();
            await client._socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancel);
            client._stream = new NetworkStream(client._socket, ownsSocket: false);
            var greeting = await client.ReceiveAsync(18, cancel);
            Assert.True(greeting.AsSpan(0, 16).SequenceEqual("NBDMAGICIHAVEOPT"u8), "no NBD greeting");
            await client._stream.WriteAsync(new byte[] { 0, 0, 0, 3 }, cancel);
            return client;
        }

        public static byte[] Header(uint option, int length)
        {
            var header = new byte[16];
            "IHAVEOPT"u8.CopyTo(header);
            BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), option);
            BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), (uint)length);
            return header;
        }

        public async Task SendRawAsync(byte[] bytes, CancellationToken cancel) => await _stream.WriteAsync(bytes, cancel);

        /// <summary>Reads until the server closes; returns how many bytes it sent meanwhile.</summary>
        public async Task<int> ReadToEndAsync(CancellationToken cancel)
        {
            var sink = new byte[4096];
            int total = 0;
            try
            {
                for (int got; (got = await _stream.ReadAsync(sink, cancel)) > 0;)
                    total += got;
            }
            catch (IOException)
            {
                // A reset is a close too.
            }
            return total;
        }

        public async Task<List<(uint Type, string Data)>> OptionAsync(uint option, byte[] data, CancellationToken cancel)
        {
            await _stream.WriteAsync((byte[])[.. Header(option, data.Length), .. data], cancel);
            var replies = new List<(uint, string)>();
            while (true)
            {
                var reply = await ReceiveAsync(20, cancel);
                uint type = BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(12));
                int length = (int)BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(16));
                replies.Add((type, Encoding.UTF8.GetString(await ReceiveAsync(length, cancel))));
                if (type == Ack || (type & 0x80000000) != 0)
                    return replies;
            }
        }

        /// <summary>The TLS handshake after STARTTLS's ACK, checking the server against the CA.</summary>
        public async Task UpgradeAsync(string certificates, CancellationToken cancel)
        {
            var ca = X509CertificateLoader.LoadCertificateFromFile(Path.Combine(certificates, "ca-cert.pem"));
            using var pem = X509Certificate2.CreateFromPemFile(Path.Combine(certificates, "client-cert.pem"), Path.Combine(certificates, "client-key.pem"));
            var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
            policy.CustomTrustStore.Add(ca);
            var tls = new SslStream(_stream, leaveInnerStreamOpen: false);
            await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
            {
                TargetHost = "localhost",
                ClientCertificates = [pem],
                CertificateChainPolicy = policy,
            }, cancel);
            _stream = tls;
        }

        /// <summary>Sends a simple READ and returns its data.</summary>
        public async Task<byte[]> ReadAsync(long offset, int length, CancellationToken cancel)
        {
            var header = new byte[28];
            BinaryPrimitives.WriteUInt32BigEndian(header, 0x25609513);
            BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), 42);
            BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), (ulong)offset);
            BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), (uint)length);
            await _stream.WriteAsync(header, cancel);
            var reply = await ReceiveAsync(16, cancel);
            Assert.Equal(0x67446698u, BinaryPrimitives.ReadUInt32BigEndian(reply));
            Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4)));
            return await ReceiveAsync(length, cancel);
        }

        private async Task<byte[]> ReceiveAsync(int count, CancellationToken cancel)
        {
            var data = new byte[count];
            await _stream.ReadExactlyAsync(data, cancel);
            return data;
        }

        public void Dispose()
        {
            _stream?.Dispose();
            _socket.Dispose();
        }
    }
}
