namespace ThinFast.Testing;

/// <summary>
/// A throw-away PKI made with the openssl command line, in the folder layouts qemu's
/// <c>tls-creds-x509</c> and libnbd's <c>tls-certificates</c> read: a CA, a server certificate for
/// 127.0.0.1 and localhost, and client folders with a CA-signed certificate, a self-signed one, a
/// CA-signed one meant for servers only, and none. Made by the tool the clients' users would use, so the tests do not trust .NET to check
/// certificates .NET made.
/// </summary>
public sealed class TestCertificates : IDisposable
{
    private const string Days = "2";

    private TestCertificates(string root)
    {
        Root = root;
    }

    public string Root { get; }

    /// <summary>ca-cert.pem, server-cert.pem, server-key.pem: what <c>--tls-certs</c> takes.</summary>
    public string ServerFolder => Path.Combine(Root, "server");

    /// <summary>ca-cert.pem, client-cert.pem and client-key.pem signed by the CA.</summary>
    public string ClientFolder => Path.Combine(Root, "client");

    /// <summary>ca-cert.pem and a self-signed client-cert.pem with its key (CN=intruder).</summary>
    public string SelfSignedClientFolder => Path.Combine(Root, "self-signed");

    /// <summary>ca-cert.pem and a CA-signed certificate for servers only (extended key usage
    /// serverAuth, CN=server-only): signed by the right CA, but not for client authentication.</summary>
    public string ServerOnlyClientFolder => Path.Combine(Root, "server-only");

    /// <summary>Only ca-cert.pem: the client checks the server but has no certificate to show.</summary>
    public string NoCertificateClientFolder => Path.Combine(Root, "no-cert");

    /// <summary>The CA's private key (never in a folder a server or client reads).</summary>
    public string CaKey => Path.Combine(Root, "ca", "ca-key.pem");

    public string CaCertificate => Path.Combine(Root, "ca", "ca-cert.pem");

    public static TestCertificates Create()
    {
        var pki = new TestCertificates(Directory.CreateTempSubdirectory("thinfast-pki-").FullName);
        try
        {
            pki.Make();
            return pki;
        }
        catch
        {
            pki.Dispose();
            throw;
        }
    }

    private void Make()
    {
        string[] clientFolders = [ClientFolder, SelfSignedClientFolder, ServerOnlyClientFolder, NoCertificateClientFolder];
        foreach (string folder in (string[])[Path.GetDirectoryName(CaKey)!, ServerFolder, .. clientFolders])
            Directory.CreateDirectory(folder);
        OpenSsl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", Days,
            "-subj", "/CN=ThinFast test CA", "-keyout", CaKey, "-out", CaCertificate,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
        // RSA for the server and ECDSA for the clients, so both key types are loaded somewhere.
        SignedByCa(ServerFolder, "server", "rsa:2048", "/CN=localhost", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost");
        SignedByCa(ClientFolder, "client", "ec", "/CN=thinfast test client", "clientAuth", null);
        SignedByCa(ServerOnlyClientFolder, "client", "ec", "/CN=server-only", "serverAuth", null);
        OpenSsl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", Days,
            "-subj", "/CN=intruder", "-keyout", Path.Combine(SelfSignedClientFolder, "client-key.pem"),
            "-out", Path.Combine(SelfSignedClientFolder, "client-cert.pem"),
            "-addext", "keyUsage=critical,digitalSignature,keyEncipherment", "-addext", "extendedKeyUsage=clientAuth");
        foreach (string folder in (string[])[ServerFolder, .. clientFolders])
            File.Copy(CaCertificate, Path.Combine(folder, "ca-cert.pem"));
    }

    private void SignedByCa(string folder, string role, string key, string subject, string purpose, string? altNames)
    {
        List<string> args =
        [
            "req", "-x509", "-newkey", key, "-nodes", "-days", Days, "-subj", subject,
            "-keyout", Path.Combine(folder, $"{role}-key.pem"), "-out", Path.Combine(folder, $"{role}-cert.pem"),
            "-CA", CaCertificate, "-CAkey", CaKey,
            "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
            "-addext", $"extendedKeyUsage={purpose}",
        ];
        if (key == "ec")
            args.InsertRange(4, ["-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        if (altNames is not null)
            args.AddRange(["-addext", altNames]);
        OpenSsl([.. args]);
    }

    private static void OpenSsl(params string[] args)
    {
        var result = ExternalTool.Run("openssl", args);
        if (result.ExitCode != 0)
            throw new InvalidOperationException($"openssl {string.Join(' ', args)} failed: {result}");
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
            // Nothing holds these files open; a leftover temp folder is harmless.
        }
    }
}
