#!/usr/bin/perl
# Lab UDP probe (tests/lab/guest/connect.sh uses it). Perl, because it starts in a fraction of
# the time python3 needs under TCG and its core has everything needed.
#
#   udp.pl send LINKNAME DEST PORT INTERVAL_MS OUT
#       A client's "continuous sender": every INTERVAL_MS it tries to send one datagram
#       "<seq> <mono_us>" to DEST:PORT through the client's ppp interface (the second line of
#       pppd's /run/ppp-LINKNAME.pid, bound with SO_BINDTODEVICE, so no route is needed and it
#       can start before the interface exists). Every attempt gets the next sequence number; each
#       send the kernel accepted is logged to OUT as "<seq> <mono_us> <ifname>". Runs until killed.
#   udp.pl recv PORT OUT
#       The far side: logs every datagram as "<seq> <sent_mono_us> <recv_mono_us> <source ip>".
#   udp.pl forge LINKNAME SRC DEST PORT COUNT TAG
#       A client forging its source: COUNT raw IPv4/UDP datagrams "TAG <n>" from SRC (any
#       address) to DEST:PORT, written through the client's ppp link (SO_BINDTODEVICE on a raw
#       socket with our own IP header). Prints how many the kernel accepted.
#   udp.pl sink PORT OUT
#       The far side for forged datagrams: logs every datagram as "<payload> <source ip>".
#   udp.pl stamp OUT CMD...
#       Runs CMD and copies its output to OUT line by line, each prefixed with the time it was
#       read (for `nft monitor`: the stamp is at or after the event). SIGTERM ends CMD too.
#   udp.pl syslog SOCKET OUT
#       A syslog reader: binds the datagram socket SOCKET (/dev/log) and logs every message to
#       OUT as "<recv_mono_us> <message>" (the message as sent: "<pri>date tag[pid]: text").
#       Creates OUT.ready once it listens.
#
# Times are CLOCK_MONOTONIC in microseconds: one clock for every namespace of the VM.
use strict;
use warnings;
use Socket qw(AF_INET AF_UNIX pack_sockaddr_un SOCK_DGRAM SOCK_RAW SOL_SOCKET IPPROTO_UDP INADDR_ANY inet_aton inet_ntoa pack_sockaddr_in unpack_sockaddr_in);
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC sleep);
use IO::Handle;

use constant SO_BINDTODEVICE => 25;
use constant IPPROTO_RAW => 255;

# The interface of pppd link LINKNAME (the second line of /run/ppp-LINKNAME.pid), or ''.
sub link_if {
    my ($link) = @_;
    open(my $p, '<', "/run/ppp-$link.pid") or return '';
    my @l = <$p>;
    close($p);
    my $if = $l[1] // '';
    chomp $if;
    return $if;
}

sub now_us { return int(clock_gettime(CLOCK_MONOTONIC) * 1e6); }

my $mode = shift // die "usage: udp.pl send|recv|forge|sink|stamp|syslog ...\n";

if ($mode eq 'send') {
    my ($link, $dest, $port, $ival_ms, $out) = @ARGV;
    die "usage: udp.pl send LINKNAME DEST PORT INTERVAL_MS OUT\n" unless defined $out;
    open(my $o, '>>', $out) or die "cannot open $out: $!\n";
    $o->autoflush(1);
    my $to = pack_sockaddr_in($port, inet_aton($dest)) or die "bad destination $dest\n";
    my ($seq, $sock, $bound) = (0, undef, '');
    my $pidfile = "/run/ppp-$link.pid";
    while (1) {
        my $if = '';
        if (open(my $p, '<', $pidfile)) {
            my @l = <$p>;
            close($p);
            $if = $l[1] // '';
            chomp $if;
        }
        if ($if ne '' && $if ne $bound) {
            $sock = undef;
            my $s;
            if (socket($s, AF_INET, SOCK_DGRAM, IPPROTO_UDP)
                && setsockopt($s, SOL_SOCKET, SO_BINDTODEVICE, pack('Z*', $if))) {
                ($sock, $bound) = ($s, $if);
            }
        }
        $seq++;
        if ($sock) {
            my $t = now_us();
            if (defined send($sock, "$seq $t", 0, $to)) {
                print $o "$seq $t $bound\n";
            } elsif (!-e "/sys/class/net/$bound") {
                ($sock, $bound) = (undef, '');
            }
        }
        sleep($ival_ms / 1000.0);
    }
} elsif ($mode eq 'recv') {
    my ($port, $out) = @ARGV;
    die "usage: udp.pl recv PORT OUT\n" unless defined $out;
    open(my $o, '>>', $out) or die "cannot open $out: $!\n";
    $o->autoflush(1);
    socket(my $s, AF_INET, SOCK_DGRAM, IPPROTO_UDP) or die "socket: $!\n";
    bind($s, pack_sockaddr_in($port, INADDR_ANY)) or die "bind :$port: $!\n";
    # Tell the caller we listen (it waits for this file before starting senders).
    my $r;
    open($r, '>', "$out.ready") and close($r);
    while (1) {
        my $from = recv($s, my $buf, 256, 0);
        next unless defined $from;
        my $t = now_us();
        my ($fport, $faddr) = unpack_sockaddr_in($from);
        my ($seq, $sent) = split(/ /, $buf);
        next unless defined $sent && $seq =~ /^\d+$/ && $sent =~ /^\d+$/;
        print $o "$seq $sent $t ", inet_ntoa($faddr), "\n";
    }
} elsif ($mode eq 'forge') {
    my ($link, $src, $dest, $port, $count, $tag) = @ARGV;
    die "usage: udp.pl forge LINKNAME SRC DEST PORT COUNT TAG\n" unless defined $tag;
    my $if = link_if($link);
    die "no interface for link $link\n" if $if eq '';
    # IPPROTO_RAW implies IP_HDRINCL: the header (and its source) is ours; the kernel fills in
    # the checksum and the id.
    socket(my $s, AF_INET, SOCK_RAW, IPPROTO_RAW) or die "raw socket: $!\n";
    setsockopt($s, SOL_SOCKET, SO_BINDTODEVICE, pack('Z*', $if)) or die "bind to $if: $!\n";
    my ($saddr, $daddr) = (inet_aton($src), inet_aton($dest));
    my $to = pack_sockaddr_in(0, $daddr);
    my $ok = 0;
    for my $n (1 .. $count) {
        my $payload = "$tag $n";
        my $udp = pack('nnnn', 40000, $port, 8 + length($payload), 0) . $payload;
        my $ip = pack('CCnnnCCna4a4', 0x45, 0, 20 + length($udp), 0, 0x4000, 64, 17, 0, $saddr, $daddr);
        $ok++ if defined send($s, $ip . $udp, 0, $to);
        sleep(0.005);
    }
    print "$ok\n";
} elsif ($mode eq 'sink') {
    my ($port, $out) = @ARGV;
    die "usage: udp.pl sink PORT OUT\n" unless defined $out;
    open(my $o, '>>', $out) or die "cannot open $out: $!\n";
    $o->autoflush(1);
    socket(my $s, AF_INET, SOCK_DGRAM, IPPROTO_UDP) or die "socket: $!\n";
    bind($s, pack_sockaddr_in($port, INADDR_ANY)) or die "bind :$port: $!\n";
    my $r;
    open($r, '>', "$out.ready") and close($r);
    while (1) {
        my $from = recv($s, my $buf, 256, 0);
        next unless defined $from;
        my ($fport, $faddr) = unpack_sockaddr_in($from);
        $buf =~ s/[^ -~]//g;
        print $o "$buf ", inet_ntoa($faddr), "\n";
    }
} elsif ($mode eq 'stamp') {
    my ($out, @cmd) = @ARGV;
    die "usage: udp.pl stamp OUT CMD...\n" unless @cmd;
    open(my $o, '>>', $out) or die "cannot open $out: $!\n";
    $o->autoflush(1);
    my $pid = open(my $in, '-|', @cmd) or die "cannot run @cmd: $!\n";
    $SIG{TERM} = sub { kill('TERM', $pid); exit(0); };
    while (my $line = <$in>) {
        print $o now_us(), " ", $line;
    }
} elsif ($mode eq 'syslog') {
    my ($path, $out) = @ARGV;
    die "usage: udp.pl syslog SOCKET OUT\n" unless defined $out;
    open(my $o, '>>', $out) or die "cannot open $out: $!\n";
    $o->autoflush(1);
    unlink($path);
    socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or die "socket: $!\n";
    bind($s, pack_sockaddr_un($path)) or die "bind $path: $!\n";
    chmod(0666, $path);
    my $r;
    open($r, '>', "$out.ready") and close($r);
    while (1) {
        next unless defined recv($s, my $buf, 65536, 0);
        my $t = now_us();
        $buf =~ s/[\r\n\0]+$//;
        $buf =~ s/[\r\n]/ /g;
        print $o "$t $buf\n";
    }
} else {
    die "usage: udp.pl send|recv|forge|sink|stamp|syslog ...\n";
}
