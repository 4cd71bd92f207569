namespace ThinFast.Nbd;
