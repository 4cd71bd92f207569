using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace ThinFast.Nbd;

/// <summary>
/// X.509 credentials of a TLS-requiring server, loaded from a folder laid out as qemu's
/// <c>tls-creds-x509</c> object expects (and nbdkit's <c>--tls-certificates</c>): <c>ca-cert.pem</c>
/// (the CAs that sign client certificates, and the server's own chain), <c>server-cert.pem</c> (the
/// server's certificate, optionally followed by intermediates) and <c>server-key.pem</c> (its
/// unencrypted private key, RSA or ECDSA, PKCS#1/SEC1 or PKCS#8). Every file is checked when the
/// folder is loaded, so a bad folder fails at start with a message naming the file instead of
/// failing every client's handshake later.
/// </summary>
public sealed class NbdTlsCredentials
{
    public const string CaFile = "ca-cert.pem";
    public const string CertificateFile = "server-cert.pem";
    public const string KeyFile = "server-key.pem";

    private static readonly Oid ClientAuthentication = new("1.3.6.1.5.5.7.3.2", "Client Authentication");

    private readonly SslStreamCertificateContext _certificate;
    private readonly X509Certificate2Collection _authorities;

    private NbdTlsCredentials(string folder, SslStreamCertificateContext certificate, X509Certificate2Collection authorities, bool verifyPeer)
    {
        Folder = folder;
        _certificate = certificate;
        _authorities = authorities;
        VerifyPeer = verifyPeer;
    }

    /// <summary>The folder the credentials came from (for log lines).</summary>
    public string Folder { get; }

    /// <summary>The server's certificate (the leaf).</summary>
    public X509Certificate2 ServerCertificate => _certificate.TargetCertificate;

    /// <summary>True (qemu's default for servers, <c>verify-peer=yes</c>): a client must present a
    /// certificate that chains to a CA in <c>ca-cert.pem</c> and may be used for client
    /// authentication, or its handshake fails. False: no client certificate is asked for, and any
    /// client that completes the TLS handshake is served (TLS then only protects the traffic).</summary>
    public bool VerifyPeer { get; }

    /// <summary>Loads and checks a qemu-style x509 folder; throws
    /// <see cref="NbdTlsCredentialsException"/> naming the file at fault.</summary>
    public static NbdTlsCredentials LoadFolder(string folder, bool verifyPeer = true)
    {
        if (!Directory.Exists(folder))
            throw new NbdTlsCredentialsException($"TLS certificate folder {folder} does not exist");
        string caPath = Path.Combine(folder, CaFile), certPath = Path.Combine(folder, CertificateFile), keyPath = Path.Combine(folder, KeyFile);
        var authorities = ReadCertificates(caPath, "CA certificate");
        var chain = ReadCertificates(certPath, "server certificate");
        var leaf = chain[0];
        var now = DateTime.Now;
        if (leaf.NotAfter < now)
            throw new NbdTlsCredentialsException($"{certPath}: the server certificate expired on {leaf.NotAfter:u}");
        if (leaf.NotBefore > now)
            throw new NbdTlsCredentialsException($"{certPath}: the server certificate is not valid before {leaf.NotBefore:u}");
        var withKey = AttachKey(leaf, keyPath);
        CheckSignedByAuthorities(withKey, chain, authorities, certPath, caPath);
        var intermediates = new X509Certificate2Collection();
        for (int i = 1; i < chain.Count; i++)
            intermediates.Add(chain[i]);
        // Built once, offline: the chain sent in every handshake is the one checked here.
        var context = SslStreamCertificateContext.Create(withKey, intermediates, offline: true);
        return new NbdTlsCredentials(folder, context, authorities, verifyPeer);
    }

    private static X509Certificate2Collection ReadCertificates(string path, string what)
    {
        if (!File.Exists(path))
            throw new NbdTlsCredentialsException($"{path}: no such file (the {what}, PEM)");
        var certificates = new X509Certificate2Collection();
        try
        {
            certificates.ImportFromPemFile(path);
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException)
        {
            throw new NbdTlsCredentialsException($"{path}: cannot read the {what}: {e.Message}");
        }
        if (certificates.Count == 0)
            throw new NbdTlsCredentialsException($"{path}: holds no PEM certificate (the {what})");
        return certificates;
    }

    private static X509Certificate2 AttachKey(X509Certificate2 leaf, string keyPath)
    {
        if (!File.Exists(keyPath))
            throw new NbdTlsCredentialsException($"{keyPath}: no such file (the server's private key, PEM)");
        string pem;
        try
        {
            pem = File.ReadAllText(keyPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new NbdTlsCredentialsException($"{keyPath}: cannot read the private key: {e.Message}");
        }
        if (pem.Contains("ENCRYPTED PRIVATE KEY", StringComparison.Ordinal) || pem.Contains("Proc-Type: 4,ENCRYPTED", StringComparison.Ordinal))
            throw new NbdTlsCredentialsException($"{keyPath}: the private key is encrypted; give an unencrypted key (keep the file mode 0600)");
        if (!PemEncoding.TryFind(pem, out _))
            throw new NbdTlsCredentialsException($"{keyPath}: holds no usable {KeyAlgorithm(leaf)} private key (the certificate's key is {KeyAlgorithm(leaf)}): no PEM private key block found");
        // The key's type must be the certificate's: a key of another type cannot match it.
        AsymmetricAlgorithm key = leaf.GetRSAPublicKey() is { } rsaPublic ? Disposed(rsaPublic, RSA.Create())
            : leaf.GetECDsaPublicKey() is { } ecPublic ? Disposed(ecPublic, ECDsa.Create())
            : throw new NbdTlsCredentialsException($"{CertificateFile}: the certificate's key type ({leaf.PublicKey.Oid.FriendlyName}) is not supported; use RSA or ECDSA");
        using (key)
        {
            try
            {
                key.ImportFromPem(pem);
            }
            catch (Exception e) when (e is ArgumentException or CryptographicException)
            {
                throw new NbdTlsCredentialsException($"{keyPath}: holds no usable {KeyAlgorithm(leaf)} private key (the certificate's key is {KeyAlgorithm(leaf)}): {e.Message}");
            }
            // The same public key, byte for byte, or the key belongs to another certificate.
            if (!key.ExportSubjectPublicKeyInfo().AsSpan().SequenceEqual(leaf.PublicKey.ExportSubjectPublicKeyInfo()))
                throw new NbdTlsCredentialsException($"{keyPath}: this private key does not belong to the certificate in {CertificateFile} ({leaf.Subject})");
            return key is RSA rsa ? leaf.CopyWithPrivateKey(rsa) : leaf.CopyWithPrivateKey((ECDsa)key);
        }

        static AsymmetricAlgorithm Disposed(IDisposable publicKey, AsymmetricAlgorithm fresh)
        {
            publicKey.Dispose();
            return fresh;
        }
    }

    private static string KeyAlgorithm(X509Certificate2 leaf) => leaf.GetRSAPublicKey() is null ? "ECDSA" : "RSA";

    // Clients check the server against the same ca-cert.pem (qemu and libnbd read it from their
    // own folder of the same layout), so a server certificate from another CA is a setup mistake
    // that would otherwise only show as every client failing.
    private static void CheckSignedByAuthorities(X509Certificate2 leaf, X509Certificate2Collection chain, X509Certificate2Collection authorities,
        string certPath, string caPath)
    {
        using var check = new X509Chain();
        check.ChainPolicy = TrustPolicy(authorities);
        for (int i = 1; i < chain.Count; i++)
            check.ChainPolicy.ExtraStore.Add(chain[i]);
        if (!check.Build(leaf))
            throw new NbdTlsCredentialsException($"{certPath}: the server certificate does not chain to a CA in {caPath} ({ChainProblems(check)})");
    }

    private static X509ChainPolicy TrustPolicy(X509Certificate2Collection authorities)
    {
        var policy = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            // As qemu and nbdkit: no CRL is configured, and fetching one would need the network.
            RevocationMode = X509RevocationMode.NoCheck,
        };
        policy.CustomTrustStore.AddRange(authorities);
        return policy;
    }

    internal static string ChainProblems(X509Chain chain) =>
        string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).Distinct()) is { Length: > 0 } text
            ? text : "no chain to a trusted CA";

    /// <summary>Options for one client's handshake. <paramref name="rejection"/> receives why a
    /// client certificate was refused, for the log line (the exception SslStream throws only says
    /// the callback refused it).</summary>
    internal SslServerAuthenticationOptions ServerOptions(Action<string> rejection)
    {
        var options = new SslServerAuthenticationOptions
        {
            ServerCertificateContext = _certificate,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            ClientCertificateRequired = VerifyPeer,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            // A client may not renegotiate TLS 1.2 sessions: each one costs the server a handshake.
            AllowRenegotiation = false,
        };
        if (!VerifyPeer)
        {
            options.RemoteCertificateValidationCallback = static (_, _, _, _) => true;
            return options;
        }
        var policy = TrustPolicy(_authorities);
        // SslStream adds this purpose itself when a server's policy names none (removing this line
        // still fails the server-only certificate in TlsTests); stated so the check does not rest
        // on that default.
        policy.ApplicationPolicy.Add(ClientAuthentication);
        options.CertificateChainPolicy = policy;
        options.RemoteCertificateValidationCallback = (_, certificate, chain, errors) =>
        {
            if (errors == SslPolicyErrors.None)
                return true;
            if ((errors & SslPolicyErrors.RemoteCertificateNotAvailable) != 0 || certificate is null)
                rejection("the client sent no certificate (client certificates are required)");
            else
                rejection($"client certificate '{certificate.Subject}' refused: {(chain is null ? errors.ToString() : ChainProblems(chain))}");
            return false;
        };
        return options;
    }
}

/// <summary>A TLS credentials folder is unusable; the message names the file and the fault.</summary>
public sealed class NbdTlsCredentialsException(string message) : IOException(message);
