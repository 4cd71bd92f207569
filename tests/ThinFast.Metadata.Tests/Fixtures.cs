using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

internal static class Fixtures
{
    public static string Path(string name) => FixtureFiles.Path("metadata", name);
}
