namespace ThinFast.Engine;
