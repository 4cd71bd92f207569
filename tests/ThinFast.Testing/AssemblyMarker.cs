namespace ThinFast.Testing;
