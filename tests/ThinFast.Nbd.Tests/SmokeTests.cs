namespace ThinFast.Nbd.Tests;

public class SmokeTests
{
    [Fact]
    public void Builds() => Assert.True(true);
}
