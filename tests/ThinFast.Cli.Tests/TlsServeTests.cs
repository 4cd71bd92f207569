using System.Text.RegularExpressions;
using ThinFast.Testing;

namespace ThinFast.Cli.Tests;

/// <summary>thinfast serve --tls-certs as a real process: TLS required on TCP and the unix socket,
/// and every kind of bad credentials folder refused at start with one line naming the file.</summary>
public sealed class TlsServeTests
{
    [Fact]
    public void WithTlsCertsOnlyTlsClientsAreServedAndAnyAddressIsNotWarnedAbout()
    {
        string nbdinfo = Cli.Require("nbdinfo", "libnbd-bin");
        using var pki = TestCertificates.Create();
        using var t = new TempDir();
        string pool = ServeTests.NewPool(t, "vm");
        string socket = t["nbd.sock"];
        int exit;
        using (var server = new ServeTests.Server("serve", pool, "--socket", socket, "--tcp", "0.0.0.0:0", "--tls-certs", pki.ServerFolder))
        {
            Assert.Contains("TLS required", server.ReadyLine);
            // The warning is about plaintext on the network; with TLS required it would be false.
            Assert.DoesNotContain("without TLS", server.Log);
            int port = int.Parse(Regex.Match(server.ReadyLine, @"tcp:0\.0\.0\.0:(\d+)").Groups[1].Value);

            var tls = server.Client(nbdinfo, "--size", $"nbds://127.0.0.1:{port}/vm?tls-certificates={pki.ClientFolder}");
            Assert.True(tls.ExitCode == 0, tls + "\n--- serve log\n" + server.Log);
            Assert.Equal((16 << 20).ToString(), tls.Stdout.Trim());
            var unix = server.Client(nbdinfo, "--size", $"nbds+unix:///vm?socket={socket}&tls-certificates={pki.ClientFolder}");
            Assert.Equal((16 << 20).ToString(), unix.Stdout.Trim());

            var plain = server.Client(nbdinfo, "--size", $"nbd+unix:///vm?socket={socket}");
            Assert.NotEqual(0, plain.ExitCode);
            Assert.DoesNotContain((16 << 20).ToString(), plain.Stdout);
            exit = server.Signal("TERM");
        }
        Assert.Equal(0, exit);
    }

    [Fact]
    public void BadTlsFoldersFailServeAtStartWithOneLineNamingTheFile()
    {
        using var pki = TestCertificates.Create();
        using var t = new TempDir();
        string pool = ServeTests.NewPool(t, "vm");
        var before = t.Snapshot(pool);

        // Each case: a copy of the good server folder with one fault.
        string Broken(string name, Action<string> breakIt)
        {
            string folder = t[name];
            Directory.CreateDirectory(folder);
            foreach (string f in Directory.EnumerateFiles(pki.ServerFolder))
                File.Copy(f, Path.Combine(folder, Path.GetFileName(f)));
            breakIt(folder);
            return folder;
        }
        string OpenSsl(params string[] args)
        {
            var r = ExternalTool.Run("openssl", args);
            Assert.True(r.ExitCode == 0, r.ToString());
            return r.StdOut;
        }
        var cases = new (string Folder, string Expected)[]
        {
            (t["nosuch"], "does not exist"),
            (Broken("no-ca", f => File.Delete(Path.Combine(f, "ca-cert.pem"))), "ca-cert.pem: no such file"),
            (Broken("no-cert", f => File.Delete(Path.Combine(f, "server-cert.pem"))), "server-cert.pem: no such file"),
            (Broken("no-key", f => File.Delete(Path.Combine(f, "server-key.pem"))), "server-key.pem: no such file"),
            (Broken("junk-cert", f => File.WriteAllText(Path.Combine(f, "server-cert.pem"), "not a certificate\n")), "server-cert.pem: holds no PEM certificate"),
            (Broken("junk-key", f => File.WriteAllText(Path.Combine(f, "server-key.pem"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")),
                "server-key.pem: holds no usable RSA private key"),
            (Broken("other-key", f => OpenSsl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", Path.Combine(f, "server-key.pem"))),
                "server-key.pem: this private key does not belong to the certificate in server-cert.pem"),
            (Broken("encrypted-key", f => OpenSsl("pkey", "-in", Path.Combine(pki.ServerFolder, "server-key.pem"), "-aes256", "-passout", "pass:secret",
                "-out", Path.Combine(f, "server-key.pem"))), "server-key.pem: the private key is encrypted"),
            (Broken("other-ca", f =>
            {
                File.Copy(Path.Combine(pki.SelfSignedClientFolder, "client-cert.pem"), Path.Combine(f, "server-cert.pem"), overwrite: true);
                File.Copy(Path.Combine(pki.SelfSignedClientFolder, "client-key.pem"), Path.Combine(f, "server-key.pem"), overwrite: true);
            }), "server-cert.pem: the server certificate does not chain to a CA in"),
        };
        foreach (var (folder, expected) in cases)
        {
            var r = Cli.Run("serve", pool, "--socket", t["s.sock"], "--tls-certs", folder);
            Cli.AssertOneLineError(r, 1, expected);
            Assert.Contains(folder, r.Stderr);
        }
        Cli.AssertOneLineError(Cli.Run("serve", pool, "--tls-certs", pki.ServerFolder, "--tls-verify-peer", "maybe"), 2, "--tls-verify-peer 'maybe' must be yes or no");
        Cli.AssertOneLineError(Cli.Run("serve", pool, "--tls-verify-peer", "no"), 2, "--tls-verify-peer needs --tls-certs");
        Assert.False(File.Exists(t["s.sock"]));
        TempDir.AssertUnchanged(before, t.Snapshot(pool));
    }
}
