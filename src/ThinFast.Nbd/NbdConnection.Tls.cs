using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;

namespace ThinFast.Nbd;

// TLS as qemu-nbd (--tls-creds) and nbdkit (--tls=require) do it: with credentials configured,
// TLS is required, and nothing but STARTTLS and ABORT is served before it.
internal sealed partial class NbdConnection
{
    private bool _tlsActive;

    /// <summary>True when the option was answered here because TLS is required and not yet
    /// active.</summary>
    private async ValueTask<bool> RefuseBeforeTlsAsync(NbdOption option)
    {
        if (_options.Tls is null || _tlsActive || option is NbdOption.StartTls or NbdOption.Abort)
            return false;
        // EXPORT_NAME's reply has no error form, so closing is the only refusal.
        if (option == NbdOption.ExportName)
            throw new NbdProtocolException("NBD_OPT_EXPORT_NAME before STARTTLS, but TLS is required");
        await SendOptionReplyAsync(option, NbdOptionReply.ErrTlsReqd, Utf8("TLS is required: negotiate NBD_OPT_STARTTLS first")).ConfigureAwait(false);
        return true;
    }

    private async Task StartTlsAsync(byte[] data)
    {
        var credentials = _options.Tls;
        if (credentials is null)
        {
            await SendOptionReplyAsync(NbdOption.StartTls, NbdOptionReply.ErrPolicy, Utf8("TLS is not configured")).ConfigureAwait(false);
            return;
        }
        if (_tlsActive)
        {
            await SendOptionReplyAsync(NbdOption.StartTls, NbdOptionReply.ErrInvalid, Utf8("TLS is already active")).ConfigureAwait(false);
            return;
        }
        if (data.Length != 0)
        {
            await SendOptionReplyAsync(NbdOption.StartTls, NbdOptionReply.ErrInvalid, Utf8("STARTTLS takes no data")).ConfigureAwait(false);
            return;
        }
        // A client may send nothing between STARTTLS and our ACK. Bytes already here were sent in
        // plaintext, by the client or by someone on the path, and must not be taken as part of
        // the TLS session (the STARTTLS injection attack on SMTP, CVE-2011-0411): hang up.
        if (_rxEnd > _rxStart)
            throw new NbdProtocolException($"client sent {_rxEnd - _rxStart} bytes after NBD_OPT_STARTTLS before its reply; refusing plaintext ahead of the TLS handshake");
        await SendOptionReplyAsync(NbdOption.StartTls, NbdOptionReply.Ack).ConfigureAwait(false);
        _rxStart = _rxEnd = 0;

        var stream = new SslStream(new NetworkStream(_socket, ownsSocket: false), leaveInnerStreamOpen: false);
        string? refusal = null;
        try
        {
            // The handshake timeout still runs: a stalled TLS handshake is dropped by it.
            await stream.AuthenticateAsServerAsync(credentials.ServerOptions(reason => refusal = reason), CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is AuthenticationException or IOException or SocketException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new NbdProtocolException($"TLS handshake failed: {refusal ?? OneLine(e)}");
        }
        _transport = new TlsTransport(stream);
        _tlsActive = true;
        // The protocol forgets everything negotiated before STARTTLS (an attacker may have chosen
        // it). Today nothing can have been: with TLS required, those options were refused with
        // ERR_TLS_REQD. The reset keeps that true if an optional-TLS mode is ever added.
        _structuredReplies = false;
        _metaContextExport = null;
        _allocationContextSelected = false;
    }

    private static string OneLine(Exception e)
    {
        var text = e.InnerException is { } inner ? $"{e.Message} ({inner.Message})" : e.Message;
        return text.ReplaceLineEndings(" ");
    }
}
